"""Vision-language backbones (open_clip), prompts, pre-training of the toy CLIP, feature cache."""
