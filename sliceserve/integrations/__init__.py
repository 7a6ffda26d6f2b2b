"""sliceserve's policies inside other engines (one policy, two mechanisms)."""
