"""The platform's app as far as training metrics go: the QuickTest model and the listener."""
