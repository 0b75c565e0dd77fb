"""Built-in plugins: model adapters, tasks and attention methods, registered through the entry-point group
``bsight`` exactly as third-party plugins are."""
