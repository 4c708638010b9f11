"""r1kit: the DeepSeek-R1 training system (GRPO R1-Zero, the R1 recipe, distillation)."""

__version__ = "0.1.0"
