"""Template filters of the site's pages and admin."""
