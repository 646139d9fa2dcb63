"""Training under Hugging Face accelerate, written once (``loop.py``) and used by both stages.

A stage is a ``TrainTask`` (duck-typed protocol) that ``loop.run_task`` drives:

    class TrainTask(Protocol):
        name: str                                   # "msc" | "smis"
        def trainable_modules(self) -> list[torch.nn.Module]   # modules holding the trainable parameters
                                                               # (prepared with accelerate, checkpointed)
        def loss(self, batch: dict, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]
        def evaluate(self, batch: dict) -> dict[str, float]    # validation metrics for one batch (no grad)
        def export_state(self) -> dict[str, Tensor]            # weights written to msc/adapter .safetensors

Batches come from ``data.SliceDataset`` (dict of tensors: image (B,1,H,W) in [0,1], soft_mask (B,1,H,W) in
[0,1], plus lists: text, label, sample_id).
"""
