"""Test backends the local cluster runs as pods: an httpbin-style HTTP server and a TCP echo server."""
