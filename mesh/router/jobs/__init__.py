"""The routers' background jobs, one module each, run by mesh.router.background.LeaderWork."""
