"""The HTTP layer: the aiohttp app, its routes and handlers, tus, downloads, the page."""
