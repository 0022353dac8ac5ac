FROM ${uv_image} AS uv

FROM ${image}
# CUDA images carry no Python: a standalone CPython ${python}, the version the requirements were pinned with.
RUN --mount=from=uv,source=/uv,target=/usr/local/bin/uv \
    UV_NO_CACHE=1 UV_PYTHON_INSTALL_DIR=/opt/python uv venv --seed --python ${python} /opt/venv
