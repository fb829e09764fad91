"""The Kubernetes controller: Predictor resources in, registered models and vmodels out."""
