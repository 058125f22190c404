"""The course's apps/ folder as a package, so that `apps.models` imports as the course's hw4
`simple_ml` does (`from apps.models import *`); with apps/ itself on sys.path, `simple_ml`,
`mlp_resnet` and `models` import as top-level modules too."""
