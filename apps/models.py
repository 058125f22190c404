"""The course's apps/models.py: ConvBN, ResNet9 and LanguageModel (defined in
needle.apps.models, so that `needle train` can use them too)."""

# Course code does `from models import *` and expects np, ndl and nn.
import numpy as np  # noqa: F401

import needle as ndl  # noqa: F401
import needle.nn as nn  # noqa: F401
from needle.apps.models import ConvBN, LanguageModel, ResNet9  # noqa: F401
