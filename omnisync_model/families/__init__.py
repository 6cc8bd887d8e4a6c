"""Model families, one sub-package each, plain PyTorch. Model files import only torch, safetensors and
``omnisync_model.core``; never sampling, media, nodes or ComfyUI. Each family is adapted to the pipeline in
``omnisync_model/backends``."""
