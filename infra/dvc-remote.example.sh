#!/usr/bin/env bash
# Example: an S3-compatible DVC remote for data/, models/, features/ and results/.
# Credentials stay in the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) or
# in .dvc/config.local (git-ignored) — never in .dvc/config.
set -euo pipefail
dvc remote add -d cluster s3://ovml-dvc/cache
dvc remote modify cluster endpointurl "${DVC_S3_ENDPOINT:-https://s3.amazonaws.com}"
dvc push        # after `dvc repro` on a GPU node
# elsewhere: dvc pull && dvc repro   (only stale stages recompute)
