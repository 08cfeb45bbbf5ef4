"""Data modules for soft prompting: objects take keyword arguments; spt/conf/data/*.yaml builds them."""

from spt.data.images import FewShotImageDataModule
from spt.data.multitask import MultiTaskDataModule, MultiTaskInfo
from spt.data.task import METRICS, TaskInfo
from spt.data.text_classification import TextClassificationDataModule
from spt.data.text_to_text import GenerationTaskInfo, TextToTextDataModule, generation_metrics

__all__ = [
    "METRICS",
    "TaskInfo",
    "TextClassificationDataModule",
    "MultiTaskDataModule",
    "MultiTaskInfo",
    "FewShotImageDataModule",
    "GenerationTaskInfo",
    "TextToTextDataModule",
    "generation_metrics",
]
