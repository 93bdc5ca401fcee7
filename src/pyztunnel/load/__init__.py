"""`pyztunnel load`: a fortio-compatible load generator (HTTP/1.1 and TCP echo) that hides no error."""
