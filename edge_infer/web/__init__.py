"""The web app (`edge-infer serve`): an upload page and a JSON API over the one Classifier API."""
