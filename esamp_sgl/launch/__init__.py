"""Starting SGLang: the bundled model, a server or Engine, data/tensor-parallel settings."""
