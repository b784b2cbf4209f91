import sys
import urllib.request

try:
    urllib.request.urlopen("http://127.0.0.1:8000/health", timeout=2)
except Exception as exc:
    sys.exit(str(exc))
