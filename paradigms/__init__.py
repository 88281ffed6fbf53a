"""Built-in paradigm plugins. Each module registers its classes with ``bench.registry.register``."""
