"""Settings of the tests' stand-in for the platform's Django project."""
