"""Ray-native MLOps platform for image classification: the importable library."""
