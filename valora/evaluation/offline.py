"""Predictions from an in-process ``valora.llm.LLM``: every job in one ``chat`` call (greedy,
adapters mixed in the engine's batches), or one ``classify`` call for task-head adapters."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from valora.evaluation.evaluate import BASE
from valora.evaluation.messages import template_messages
from valora.sampling_params import SamplingParams


class OfflineRunner:
    """A predictor (``valora.evaluation.evaluate``) over an ``LLM``. Images are opened once per
    call and handed over as PIL images, videos as file paths (decoded by the engine with its
    video processor settings)."""

    def __init__(self, llm, max_tokens: int = 32, use_tqdm: bool = True) -> None:
        self.llm = llm
        self.max_tokens = max_tokens
        self.use_tqdm = use_tqdm

    def __call__(
        self, examples: Sequence[dict], adapters: Sequence[str], classify: bool = False
    ) -> list[str]:
        if classify:
            return self.classify(examples, adapters)
        return self.generate(examples, adapters)

    def generate(self, examples: Sequence[dict], adapters: Sequence[str]) -> list[str]:
        """Greedy text of ``max_tokens`` at most per example."""
        conversations, images, videos = self._inputs(examples)
        outs = self.llm.chat(
            conversations,
            SamplingParams(temperature=0.0, max_tokens=self.max_tokens),
            images=images,
            videos=videos,
            lora=[None if a == BASE else a for a in adapters],
            use_tqdm=self.use_tqdm,
        )
        return [out.outputs[0].text for out in outs]

    def classify(self, examples: Sequence[dict], adapters: Sequence[str]) -> list[str]:
        """The task head's label per example."""
        conversations, images, videos = self._inputs(examples)
        template = self.llm.tokenizer.apply_chat_template
        prompts = [
            {"prompt": template(c), "multi_modal_data": {"image": im, "video": vid}}
            for c, im, vid in zip(conversations, images, videos)
        ]
        outs = self.llm.classify(prompts, adapter=list(adapters), use_tqdm=self.use_tqdm)
        return [out.classification.label for out in outs]

    @staticmethod
    def _inputs(examples: Sequence[dict]) -> tuple[list, list, list]:
        """Templated conversations, PIL images and video paths, one list per example."""
        opened: dict[str, Image.Image] = {}
        conversations, images, videos = [], [], []
        for example in examples:
            templated, image_paths, video_paths = template_messages(example["messages"])
            for path in image_paths:
                if path not in opened:
                    with Image.open(path) as image:
                        image.load()
                        opened[path] = image.copy()
            conversations.append(templated)
            images.append([opened[p] for p in image_paths])
            videos.append(video_paths)
        return conversations, images, videos
