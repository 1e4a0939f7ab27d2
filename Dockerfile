# quicmig live lab: the server on UDP 4433; the client and the simulator from the same image.
#   docker build -t quicmig .
#   docker run --rm --name quicmig -p 4433:4433/udp quicmig         # server (Ctrl-C stops it)
#   docker exec -it quicmig quicmig client                          # client, same container
#   docker run --rm quicmig quicmig run all                         # the simulator
FROM python:3.11-slim

WORKDIR /opt/quicmig
COPY pyproject.toml README.md requirements.txt ./
COPY src ./src
COPY *.py ./
RUN pip install --no-cache-dir .

# Certificates are created here on the server's first start (cert.pem, key.pem, ca.pem); the
# client run with `docker exec` finds ca.pem here too.
WORKDIR /lab
EXPOSE 4433/udp
# 0.0.0.0 so that `-p 4433:4433/udp` reaches it; migrations inside the container use loopback.
CMD ["quicmig", "server", "--host", "0.0.0.0"]
