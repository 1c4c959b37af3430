"""Offline training tools: a LoRA adapter plus a vision task head trained jointly
(``train_task_head``) and a synthetic labelled image/video set (``synthetic_clips``)."""
