"""Research ideas, one file each: every module here is imported by research.plugins, so
its registrations join the registries. docs/EXTENDING.md walks through them."""
