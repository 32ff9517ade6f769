"""The evaluation harness: lm-eval's task files over local data, scored by the in-process
engine or an OpenAI-compatible server (`ember eval run`)."""

from .backends import EngineBackend, OpenAIBackend
from .run import evaluate, save_results
from .tasks import Task, load_task

__all__ = ["EngineBackend", "OpenAIBackend", "Task", "evaluate", "load_task", "save_results"]
