"""What a call should cost on paper: FLOPs, bytes moved, and the floors they set on a machine."""
