"""The course's apps/models.py (hw4, hw4_extra): ConvBN, ResNet9 and LanguageModel.

They are defined in needle.apps.models, so that `needle train` uses them too. As the course's
file, importing this module calls np.random.seed(0), and `from models import *` (or
`from apps.models import *`) provides np, ndl and nn besides the models.
"""

import math  # noqa: F401  (the course's models.py imports it; star-imports pass it on)
import sys  # noqa: F401

import numpy as np

import needle as ndl  # noqa: F401
import needle.nn as nn  # noqa: F401
from needle.apps.models import ConvBN, LanguageModel, ResNet9  # noqa: F401

np.random.seed(0)
