WORD = "from python_path"
