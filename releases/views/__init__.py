"""The site's HTML and plain-HTTP answers, by concern (the JSON API is releases.api):

* `pages`: the index, model and version pages;
* `downloads`: stable URLs and the local backend's file server;
* `operations`: health, readiness, metrics, the served client;
* `errors`: the one mapping of unknown (404) and withdrawn (410).
"""
