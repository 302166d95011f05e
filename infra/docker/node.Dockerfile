# The TypeScript roles (producer, sink, api): Node 20 and the project's npm dependencies.
# Builds from the registries alone: Docker Hub's node image, npm, Debian's apt.
#   docker build -f infra/docker/node.Dockerfile -t trajstore-node .
FROM node:20-bookworm-slim

# curl: the compose commands wait for the policy server with it. chromium: the browser
# environment (rollout.environment: browser); build with --build-arg WITH_CHROMIUM=0 to leave it out.
ARG WITH_CHROMIUM=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl $( [ "$WITH_CHROMIUM" = 1 ] && echo chromium ) \
 && rm -rf /var/lib/apt/lists/*
ENV CHROMIUM_PATH=/usr/bin/chromium

WORKDIR /app
COPY package.json package-lock.json ./
# tsx is a runtime dependency (the sources run through it, no build step).
RUN npm ci --omit=dev --no-audit --no-fund
COPY bin ./bin
COPY src ./src
COPY configs ./configs
COPY tsconfig.json ./
RUN ln -s /app/bin/trajstore.mjs /usr/local/bin/trajstore && trajstore --version

ENV NODE_ENV=production
ENTRYPOINT []
CMD ["trajstore", "--help"]
