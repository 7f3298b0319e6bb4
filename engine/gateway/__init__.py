"""The gateway process: the gRPC service for remote clients and its server."""
