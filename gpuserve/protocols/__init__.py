"""HTTP protocols on top of the batcher: gpuserve's native JSON routes."""
