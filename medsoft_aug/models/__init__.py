"""Models: frozen medical encoders (BiomedCLIP / tiny), the Medical Semantic Controller, the SD1.5-shaped base
model (UNet2DConditionModel + AutoencoderKL + text encoder + tokenizer + scheduler) and the decoupled
cross-attention adapter (diffusers' IPAdapterAttnProcessor2_0).

Interfaces shared by train/ and generate/ (tensor shapes in comments):

encoders.py
    load_encoder(ref: str = "tiny", device="cpu") -> MedicalEncoder   # "tiny" | local open_clip dir | hub id
    MedicalEncoder (frozen, eval):
        embed_dim: int                                   # D, BiomedCLIP joint space (512)
        ref: str; sha256: str                            # reference and a content hash for medsoft_model.json
        text_tokens(texts: list[str]) -> (tokens (B, Lt, D), mask (B, Lt) bool)     # e_t
        image_tokens(images (B, 1|3, H, W) in [0, 1]) -> (B, Lv, D)                  # e_v of I_m
        image_embed(images (B, 1|3, H, W) in [0, 1]) -> (B, D)                       # e_r of x0
msc.py
    MSCConfig (dataclass, JSON-serialisable); MedicalSemanticController(config)
        forward(text_tokens (B, Lt, D), text_mask (B, Lt), image_tokens (B, Lv, D)) -> e_MSC (B, D)
base.py
    load_base_model(ref: str = "tiny", device="cpu", dtype=float32) -> BaseModel  # "tiny" | "tiny-128" |
        # diffusers dir | single-file checkpoint | hub id; configs checked first (base_checks.py), single files
        # in single_file.py
    BaseModel: unet, vae, text_encoder, tokenizer, train_scheduler (DDPM), ref, sha256, resolution,
        encode_prompt(texts: list[str]) -> (B, 77, C)
adapter.py
    install_adapter(unet, msc_dim: int, gamma: float = 1.0) -> int   # number of decoupled layers (16 on SD1.5)
    adapter_state_dict(unet) -> dict[str, Tensor]; load_adapter_state(unet, state)
modeldir.py
    save_model_dir(...) / load_model_dir(path, device, dtype) -> TrainedModel (base, encoder, msc, meta)
"""
