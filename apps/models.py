"""The course's apps/models.py: ConvBN, ResNet9 and LanguageModel (defined in needle.models,
so that `needle train` can use them too)."""

import needle as ndl  # noqa: F401  (course code does `from models import *` and expects ndl)
import needle.nn as nn  # noqa: F401
from needle.models import ConvBN, LanguageModel, ResNet9  # noqa: F401
