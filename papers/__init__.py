"""One package per paper. A paper imports core, never another paper."""
