"""What the edge client and the cloud server both speak: metrics, results on the wire, credentials."""
