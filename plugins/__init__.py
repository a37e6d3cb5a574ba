"""Built-in fusion methods, registered through the ``fusebench.plugins`` entry-point group."""
