"""Offline training tools: LoRA fine-tuning (``sft``: ``valora-train``), accuracy-aware fusion of
tasks into few adapters (``fusion``: ``valora-fuse``), an adapter plus a vision task head trained
jointly (``train_task_head``), labelled image/video sets (``task_data``, ``synthetic_clips``) and a
CPU-sized base checkpoint (``tiny_base``)."""
