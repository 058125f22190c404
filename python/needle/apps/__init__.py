"""Applications built on needle, kept out of the core package: `import needle` does not import
them.

    needle.apps.cli       the `needle` command (`needle train`, `needle bench`)
    needle.apps.trainer   Trainer: the training loop, its hooks, checkpoints
    needle.apps.models    example models: MLP-ResNet, ResNet-9, RNN/LSTM/Transformer LMs
    needle.apps.bench     `needle bench` and the harness the scripts in benchmarks/ use
"""
