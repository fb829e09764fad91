"""The HTTP side of mesh: the v2 REST API (with the binary tensor and model repository
extensions) and the server other components mount routes on (mesh.http.app)."""
