"""Example tasks for the manifests in examples/ (the demo's worker pools import them)."""
