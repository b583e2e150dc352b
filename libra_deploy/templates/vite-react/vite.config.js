import { defineConfig } from 'vite'
import react from '@vitejs/plugin-react'

export default defineConfig({
  plugins: [react()],
  // Relative asset URLs: the site works under any path (/sites/<project>/, a bucket prefix).
  base: './',
})
