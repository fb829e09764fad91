"""Pool controllers: act on mesh.placement.pool's decisions (`mesh up`'s local pods)."""
