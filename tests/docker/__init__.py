"""The production image, built and run by `make docker-test` (not collected by `make test`)."""
