"""The router: the mesh's front door. Serves the whole v2 service and the management API over a
pool of pods, forwarding inference requests as bytes."""
