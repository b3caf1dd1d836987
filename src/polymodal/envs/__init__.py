"""The embodied tabletop world for PaLM-E-style policies (the ``[mllm]`` extra: gymnasium): tasks and the oracle
(`tasks`), the controller, pictures and the gymnasium environment (`tabletop`, registered as
``polymodal/Tabletop-v0``), oracle episodes as training data (`episodes`). See docs/embodied.md."""

from .tabletop import (
           ENV_ID,
           MAX_STEPS,
           STATE_DIM,
           TabletopEnv,
           execute,
           parse_action,
           render,
           state_text,
           state_vector,
)
from .tasks import FAMILIES, Action, Goal, State, Task, format_action, oracle_action, plan_step, sample_task

__all__ = ["ENV_ID", "FAMILIES", "MAX_STEPS", "STATE_DIM", "Action", "Goal", "State", "TabletopEnv", "Task",
           "execute", "format_action", "oracle_action", "parse_action", "plan_step", "render", "sample_task",
           "state_text", "state_vector"]
