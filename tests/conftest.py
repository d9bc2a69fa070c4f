"""Suite-wide settings: quiet gRPC core logs (GOAWAY notices when test channels close are expected)."""

import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
