"""Training under Hugging Face accelerate, written once (``loop.py``) and used by both stages.

A stage is a ``TrainTask`` (duck-typed protocol) that ``loop.run_task`` drives:

    class TrainTask(Protocol):
        name: str                                   # "msc" | "smis"
        def trainable_modules(self) -> list[torch.nn.Module]   # modules holding the trainable parameters
                                                               # (prepared with accelerate, checkpointed: only
                                                               # their requires_grad tensors are saved)
        def loss(self, batch: dict, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]
                                                    # draw ALL randomness from ``generator`` (its state is
                                                    # checkpointed; that is what makes --resume exact); any
                                                    # batch size (``--batch-size auto`` probes it on CUDA at
                                                    # 1, 2, 4, ... samples: ``autobatch.py``)
        def evaluate(self, batch: dict) -> dict[str, float]    # validation metrics for one batch (no grad)
        def export_state(self) -> dict[str, Tensor]            # weights written to msc/adapter .safetensors
      optional:
        def bind(self, prepared: list[torch.nn.Module]) -> None
                                                    # the accelerate-prepared modules (DDP wrappers under
                                                    # `accelerate launch`): run training forwards through them.
                                                    # Required for more than one process (the loop refuses
                                                    # otherwise); single-process prepare returns the same objects.
        def setup(self, device, dtype, dataset, on_progress=None) -> None
                                                    # move frozen parts; dtype = mixed-precision dtype for frozen
                                                    # weights; fill per-sample caches in fixed batches of
                                                    # ``cache_batch`` (an attribute; the loop checks it on resume),
                                                    # reporting ("cache <name>", samples, n) (on_progress optional)
        def enable_gradient_checkpointing(self) -> None
        def compile_model(self, backend: str) -> None           # torch.compile the model the loss runs (--compile)

Batches come from ``data.SliceDataset`` via ``data.collate`` (dict: image (B,1,H,W) in [0,1], soft_mask
(B,1,H,W) in [0,1], index (B,) LongTensor, plus lists: text, label, sample_id), already on the device.
"""
