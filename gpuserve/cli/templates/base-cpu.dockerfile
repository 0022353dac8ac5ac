FROM ${image}
RUN python -m venv /opt/venv
