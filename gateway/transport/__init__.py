"""The upstream seam: ``Transport.send(UpstreamRequest) -> Response`` (streaming body)."""
